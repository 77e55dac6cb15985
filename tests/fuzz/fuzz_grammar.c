/*
 * fuzz_grammar.c - libFuzzer target for the lpeg grammars of pogo.grammar
 * (durations, sizes, addresses, command lines, readiness patterns): the
 * first byte picks one, the rest is its text; tests/fuzz/fuzz_grammar.lua
 * holds the oracles.
 */
#include "fuzz_lua.h"

FUZZ_LUA_TARGET("fuzz_grammar")
