/*
 * lua_edit.c - pogo.core.edit: line editing for the REPL client, on
 * libedit's readline interface (line editing, history, reverse search with
 * Ctrl-R, tab completion).
 *
 *   local edit = require "pogo.core.edit"
 *   edit.complete(function(word, line) return { "pogo.sup.start", ... } end)
 *   edit.forward_interrupts(agent_pid)  -- Ctrl-C while busy -> SIGUSR2
 *   local line, why = edit.readline("node1> ")   -- nil, "eof" | "interrupted"
 *
 * Ctrl-C at the prompt abandons the line being typed; Ctrl-C while busy(true)
 * (waiting for the agent) sends the agent SIGUSR2, which interrupts the
 * evaluation running there, and is remembered for interrupted().
 */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <editline/readline.h>

#include "pogo.h"

static lua_State *comp_L;              /* the state of the completer */
static int comp_ref = LUA_NOREF;       /* fn(word, line) -> { candidates } */
static volatile sig_atomic_t got_int;  /* Ctrl-C since the last interrupted() */
static volatile sig_atomic_t busy;     /* waiting for the agent */
static volatile pid_t agent_pid;       /* who gets SIGUSR2 when busy */

static void on_sigint(int sig)
{
    (void)sig;
    got_int = 1;
    if (busy && agent_pid > 0)
        kill(agent_pid, SIGUSR2);
}

/* ---- completion ----------------------------------------------------------- */

static char **matches;     /* candidates of the current completion, owned */
static size_t nmatches, next_match;

static void free_matches(void)
{
    for (size_t i = 0; i < nmatches; i++)
        free(matches[i]);
    free(matches);
    matches = NULL;
    nmatches = next_match = 0;
}

/* Asks the Lua completer for the candidates of word; fills matches. */
static void collect(const char *word)
{
    free_matches();
    lua_State *L = comp_L;
    if (L == NULL || comp_ref == LUA_NOREF)
        return;
    luart_push_ref(L, comp_ref);
    lua_pushstring(L, word);
    lua_pushstring(L, rl_line_buffer ? rl_line_buffer : "");
    if (luart_call(L, 2, 1, "completion") != LUA_OK)
        return;
    if (lua_istable(L, -1)) {
        size_t n = lua_rawlen(L, -1);
        matches = calloc(n ? n : 1, sizeof *matches);
        for (size_t i = 1; matches && i <= n; i++) {
            lua_rawgeti(L, -1, (lua_Integer)i);
            const char *m = lua_tostring(L, -1);
            if (m && (matches[nmatches] = strdup(m)) != NULL)
                nmatches++;
            lua_pop(L, 1);
        }
    }
    lua_pop(L, 1);
}

static char *generator(const char *word, int state)
{
    if (state == 0) {
        collect(word);
        next_match = 0;
    }
    if (next_match >= nmatches)
        return NULL;
    return strdup(matches[next_match++]);
}

static char **attempt(const char *word, int start, int end)
{
    (void)start;
    (void)end;
    rl_attempted_completion_over = 1;     /* never fall back to file names */
    return rl_completion_matches(word, generator);
}

/* ---- the module ------------------------------------------------------------ */

/* libedit sets up its state (history included) on the first readline();
 * history loaded before that would be dropped, so set it up first. */
static void init_once(void)
{
    static int done;
    if (!done) {
        done = 1;
        rl_initialize();
        using_history();
    }
}

/* readline(prompt) -> line | nil, "eof" | nil, "interrupted" */
static int l_readline(lua_State *L)
{
    const char *prompt = luaL_optstring(L, 1, "> ");
    got_int = 0;
    char *line = readline(prompt);
    if (got_int) {
        /* Ctrl-C: libedit gives up the line; start a fresh one. */
        free(line);
        got_int = 0;
        lua_pushnil(L);
        lua_pushliteral(L, "interrupted");
        return 2;
    }
    if (line == NULL) {
        lua_pushnil(L);
        lua_pushliteral(L, "eof");
        return 2;
    }
    lua_pushstring(L, line);
    free(line);
    return 1;
}

static int l_add_history(lua_State *L)
{
    init_once();
    add_history(luaL_checkstring(L, 1));
    return 0;
}

/* load_history(path): a missing file is not an error. */
static int l_load_history(lua_State *L)
{
    init_once();
    read_history(luaL_checkstring(L, 1));
    return 0;
}

/* save_history(path[, max_lines]) */
static int l_save_history(lua_State *L)
{
    const char *path = luaL_checkstring(L, 1);
    stifle_history((int)luaL_optinteger(L, 2, 1000));
    if (write_history(path) != 0)
        return luart_oserror(L, errno, path);
    lua_pushboolean(L, 1);
    return 1;
}

/* complete(fn(word, line) -> { candidates }) */
static int l_complete(lua_State *L)
{
    luaL_checktype(L, 1, LUA_TFUNCTION);
    luart_unref(L, &comp_ref);
    comp_ref = luart_ref(L, 1);
    comp_L = L;
    rl_attempted_completion_function = attempt;
    /* '.' and ':' stay inside a word: pogo.sup.<TAB> completes fields. */
    rl_basic_word_break_characters = " \t\n\"\\'`@$><=;|&{(,+-*/%^~#[]";
    rl_completion_append_character = '\0';
    return 0;
}

/* forward_interrupts(pid): Ctrl-C while busy sends pid SIGUSR2. */
static int l_forward_interrupts(lua_State *L)
{
    agent_pid = (pid_t)luaL_checkinteger(L, 1);
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_sigint;
    sigemptyset(&sa.sa_mask);
    sa.sa_flags = 0;    /* no SA_RESTART: a blocked read returns EINTR */
    sigaction(SIGINT, &sa, NULL);
    return 0;
}

/* busy(bool): waiting for the agent (Ctrl-C is forwarded) or not. */
static int l_busy(lua_State *L)
{
    busy = lua_toboolean(L, 1);
    return 0;
}

/* interrupted() -> bool: was there a Ctrl-C since the last call? */
static int l_interrupted(lua_State *L)
{
    lua_pushboolean(L, got_int);
    got_int = 0;
    return 1;
}

/* sleep(seconds) -> true | false when a Ctrl-C cut it short. */
static int l_sleep(lua_State *L)
{
    double secs = luaL_checknumber(L, 1);
    struct timespec ts = {(time_t)secs, (long)((secs - (double)(time_t)secs) * 1e9)};
    int whole = nanosleep(&ts, NULL) == 0;
    lua_pushboolean(L, whole);
    return 1;
}

int luaopen_pogo_edit(lua_State *L)
{
    static const luaL_Reg fns[] = {
        {"readline", l_readline},
        {"add_history", l_add_history},
        {"load_history", l_load_history},
        {"save_history", l_save_history},
        {"complete", l_complete},
        {"forward_interrupts", l_forward_interrupts},
        {"busy", l_busy},
        {"interrupted", l_interrupted},
        {"sleep", l_sleep},
        {NULL, NULL},
    };
    luaL_newlib(L, fns);
    return 1;
}
