/*
 * fuzz_spec.c - libFuzzer target for child-spec files: the input is the
 * text of one file, loaded by tests/fuzz/fuzz_spec.lua the way the agent
 * loads its children directory (see there for the oracles). A file that
 * loops for ever is cut by the runtime's budget, as in the agent.
 */
#include "fuzz_lua.h"

FUZZ_LUA_TARGET("fuzz_spec")
