/*
 * fuzz_config.c - libFuzzer target for node configs: the input is the
 * text of a config file, loaded by tests/fuzz/fuzz_config.lua through
 * pogo.config as the agent loads it (see there for the oracles).
 */
#include "fuzz_lua.h"

FUZZ_LUA_TARGET("fuzz_config")
