local helper = require "helper"

describe("#unit pogo.spec", function()
  local spec

  before_each(function()
    helper.stub_core()
    spec = helper.fresh "pogo.spec"
  end)

  local PATH = "/etc/pogo/children/web.lua"

  -- A valid spec with fields overridden.
  local function with(fields)
    local t = { id = "web", cmd = { "/usr/bin/web" } }
    for k, v in pairs(fields or {}) do t[k] = v end
    return t
  end

  local function norm(fields, src)
    return spec.normalise(with(fields), { path = PATH, src = src, index = 1 })
  end

  local function accepts(fields)
    local s, err = norm(fields)
    assert.is_nil(err)
    assert.is_table(s)
    return s
  end

  -- Asserts a refusal; the message must contain every needle (plain text).
  local function refuses(fields, ...)
    local s, err = norm(fields)
    assert.is_nil(s)
    assert.is_string(err)
    for _, needle in ipairs { ... } do
      assert.matches(needle, err, 1, true)
    end
    return err
  end

  describe("normal form", function()
    it("fills every default", function()
      local s = accepts {}
      assert.are.same({
        id = "web",
        cmd = { "/usr/bin/web" },
        env = {},
        clear_env = false,
        rlimits = {},
        restart = "permanent",
        success_codes = { 0 },
        success_signals = {},
        max_restarts = 5,
        max_seconds = 10,
        backoff = { initial = 0.1, max = 30, factor = 2, jitter = 0.1, reset_after = 10 },
        cooldown = 60,
        shutdown = { timeout = 5, brutal = false },
        stop_signal = "TERM",
        readiness = { kind = "immediate" },
        hooks = {},
        log = { max_size = 10 * 1024 * 1024, max_files = 5, ring = 1000 },
        tags = {},
        weight = 1,
        partition = "available", handoff = "make_before_break",
        file = PATH,
      }, s)
    end)

    it("gives every spec its own default tables", function()
      local a, b = accepts {}, accepts {}
      a.env.X = "1"
      a.backoff.max = 1
      assert.are.same({}, b.env)
      assert.are.equal(30, b.backoff.max)
    end)

    it("leaves file nil for a spec that does not come from a file", function()
      local s = assert(spec.normalise(with {}))
      assert.is_nil(s.file)
    end)

    it("does not alias the caller's tables", function()
      local cmd = { "/bin/a" }
      local s = accepts { cmd = cmd }
      cmd[1] = "/bin/b"
      assert.are.same({ "/bin/a" }, s.cmd)
    end)
  end)

  describe("id", function()
    it("accepts letters, digits and _ . @ : - up to 128 characters", function()
      assert.are.equal("a.b@c:d-e_1", accepts({ id = "a.b@c:d-e_1" }).id)
      assert.are.equal(string.rep("x", 128), accepts({ id = string.rep("x", 128) }).id)
    end)

    it("refuses other ids and names the item, since there is no id to name", function()
      local err = refuses({ id = "a b" })
      assert.are.equal(PATH .. [[: item 1: 'id' must be a string of 1 to 128 letters, digits, '_', '.', '@', ':' or '-', got string "a b"]], err)
      refuses({ id = string.rep("x", 129) }, "item 1: 'id' must be")
      refuses({ id = "" }, [[got string ""]])
      refuses({ id = 5 }, "got number 5")
      refuses({ id = "web/1" }, "'id' must be")
    end)

    it("requires an id", function()
      local _, err = spec.normalise({ cmd = "x" }, { path = PATH, index = 3 })
      assert.are.equal(PATH .. [[: item 3: 'id' must be a string of 1 to 128 letters, digits, '_', '.', '@', ':' or '-', got nothing]], err)
    end)
  end)

  describe("cmd", function()
    it("accepts an argv list", function()
      assert.are.same({ "/bin/sleep", "10" }, accepts({ cmd = { "/bin/sleep", "10" } }).cmd)
    end)

    it("splits a command string with shell-like quoting", function()
      assert.are.same({ "app", "--name", "a b", "$HOME" }, accepts({ cmd = [[app --name "a b" $HOME]] }).cmd)
    end)

    it("refuses shell operators with the grammar's advice", function()
      local err = refuses({ cmd = "a | b" })
      assert.are.equal(PATH .. [[: child 'web': 'cmd' must be a list of arguments like { "/usr/bin/app", "--port", "80" } or a command string, got string "a | b": "|" at position 3 is a shell operator, and pogo does not run a shell; quote it, or use cmd = {"/bin/sh", "-c", "a | b"}]], err)
      refuses({ cmd = "a 'b" }, "unterminated single quote")
    end)

    it("refuses empty commands, empty or non-string arguments and other types", function()
      refuses({ cmd = "" }, [['cmd' must be]], "empty command")
      refuses({ cmd = {} }, "got a table: the list is empty")
      refuses({ cmd = { "a", 5 } }, "'cmd' item 2 must be a non-empty string, got number 5")
      refuses({ cmd = { "a", "" } }, [['cmd' item 2 must be a non-empty string, got string ""]])
      refuses({ cmd = { "a", "b\0c" } }, "'cmd' item 2")
      refuses({ cmd = { x = "a" } }, "'cmd' must be", "got a table")
      refuses({ cmd = 42 }, "got number 42")
    end)

    it("is required", function()
      local _, err = spec.normalise({ id = "web" }, { path = PATH })
      assert.are.equal(PATH .. [[: child 'web': 'cmd' must be a list of arguments like { "/usr/bin/app", "--port", "80" } or a command string, got nothing]], err)
    end)
  end)

  describe("env and clear_env", function()
    it("keeps strings and turns numbers into strings", function()
      local s = accepts { env = { PORT = 80, RATIO = 1.5, WHOLE = 3.0, NAME = "x" } }
      assert.are.same({ PORT = "80", RATIO = "1.5", WHOLE = "3", NAME = "x" }, s.env)
    end)

    it("refuses other values and bad names", function()
      refuses({ env = { DEBUG = true } }, "'env.DEBUG' must be a string or a number, got boolean true")
      refuses({ env = { X = 0 / 0 } }, "'env.X' must be a string or a number, got NaN")
      refuses({ env = { "positional" } }, "'env' has a bad name number 1")
      refuses({ env = { ["A=B"] = "1" } }, [['env' has a bad name string "A=B"]])
      refuses({ env = { ["A\0B"] = "1" } }, "'env' has a bad name")
      refuses({ env = { A = "x\0y" } }, "'env.A' must be a string or a number", "contains a NUL byte")
      refuses({ env = "PORT=80" }, "'env' must be a table")
    end)

    it("takes clear_env as a boolean", function()
      assert.is_true(accepts({ clear_env = true }).clear_env)
      refuses({ clear_env = "yes" }, [['clear_env' must be true or false, got string "yes"]])
    end)
  end)

  describe("cwd", function()
    it("keeps an absolute path", function()
      assert.are.equal("/srv/web", accepts({ cwd = "/srv/web" }).cwd)
    end)

    it("resolves a relative path against the spec file's directory", function()
      assert.are.equal("/etc/pogo/children/data", accepts({ cwd = "data" }).cwd)
      assert.are.equal("/etc/pogo/children/../x", accepts({ cwd = "../x" }).cwd)
    end)

    it("refuses empty paths and non-strings", function()
      refuses({ cwd = "" }, "'cwd' must be a directory path")
      refuses({ cwd = 1 }, "'cwd' must be a directory path, got number 1")
    end)
  end)

  describe("user, group and umask", function()
    it("accepts names and numeric ids", function()
      local s = accepts { user = "www-data", group = 33 }
      assert.are.equal("www-data", s.user)
      assert.are.equal(33, s.group)
      assert.are.equal("machine$", accepts({ user = "machine$" }).user)
    end)

    it("refuses bad names and ids", function()
      refuses({ user = "a b" }, [['user' must be a user name or a numeric id, got string "a b"]])
      refuses({ user = -1 }, "'user' must be", "got number -1")
      refuses({ group = 1.5 }, "'group' must be a group name or a numeric id, got number 1.5")
      refuses({ group = "" }, "'group' must be")
    end)

    it("reads an octal string or an integer umask", function()
      assert.are.equal(18, accepts({ umask = "022" }).umask)
      assert.are.equal(23, accepts({ umask = "0027" }).umask)
      assert.are.equal(0, accepts({ umask = "0" }).umask)
      assert.are.equal(18, accepts({ umask = 18 }).umask)
    end)

    it("refuses a umask that is not octal or out of range", function()
      refuses({ umask = "089" }, [['umask' must be an octal string like "022" or an integer from 0 to 511, got string "089"]])
      refuses({ umask = 512 }, "got number 512")
      refuses({ umask = "00777" }, "'umask' must be")
      refuses({ umask = true }, "got boolean true")
    end)
  end)

  describe("rlimits", function()
    it("turns one value into equal soft and hard limits", function()
      local s = accepts { rlimits = { nofile = 4096, core = "infinity", nproc = "unlimited" } }
      assert.are.same({
        nofile = { soft = 4096, hard = 4096 },
        core = { soft = "infinity", hard = "infinity" },
        nproc = { soft = "infinity", hard = "infinity" },
      }, s.rlimits)
    end)

    it("reads sizes for byte limits and durations for cpu", function()
      local s = accepts { rlimits = { as = "1GiB", stack = "8MiB", cpu = "1h" } }
      assert.are.same({ soft = 1024 ^ 3 // 1, hard = 1024 ^ 3 // 1 }, s.rlimits.as)
      assert.are.same({ soft = 8 * 1024 * 1024, hard = 8 * 1024 * 1024 }, s.rlimits.stack)
      assert.are.same({ soft = 3600, hard = 3600 }, s.rlimits.cpu)
    end)

    it("reads a { soft, hard } pair, positional or named", function()
      local s = accepts { rlimits = { nofile = { 1024, 4096 }, data = { soft = "1GB", hard = "infinity" } } }
      assert.are.same({ soft = 1024, hard = 4096 }, s.rlimits.nofile)
      assert.are.same({ soft = 1000000000, hard = "infinity" }, s.rlimits.data)
    end)

    it("refuses a soft limit above the hard one", function()
      refuses({ rlimits = { nofile = { 10, 5 } } }, "'rlimits.nofile' soft limit 10 is above the hard limit 5")
      refuses({ rlimits = { nofile = { "infinity", 5 } } }, "soft limit infinity is above the hard limit 5")
    end)

    it("refuses unknown limits, sizes where a count is wanted and bad values", function()
      refuses({ rlimits = { nofiles = 10 } }, "unknown field 'rlimits.nofiles' (did you mean 'rlimits.nofile'?)")
      refuses({ rlimits = { nofile = "1K" } }, [['rlimits.nofile' must be an integer >= 0 or "infinity", got string "1K"]])
      refuses({ rlimits = { as = "10 furlongs" } }, [['rlimits.as' must be a size like "64MiB"]], 'unknown unit "furlongs"')
      refuses({ rlimits = { cpu = "1.5s" } }, "'rlimits.cpu' must be a duration")
      refuses({ rlimits = { nofile = -1 } }, "got number -1")
      refuses({ rlimits = { nofile = { 1 } } }, "'rlimits.nofile' must be a value or a pair { soft, hard }")
      refuses({ rlimits = 5 }, "'rlimits' must be a table")
    end)
  end)

  describe("restart policy fields", function()
    it("accepts the three restart types", function()
      for _, r in ipairs { "permanent", "transient", "temporary" } do
        assert.are.equal(r, accepts({ restart = r }).restart)
      end
    end)

    it("names the file, line, child and field for a bad restart type", function()
      local src = 'return {\n  id = "web",\n  cmd = "x",\n  restart = "always",\n}\n'
      local _, err = spec.normalise({ id = "web", cmd = "x", restart = "always" }, { path = "children/web.lua", src = src })
      assert.are.equal([[children/web.lua:4: child 'web': 'restart' must be "permanent", "transient" or "temporary", got string "always"]], err)
    end)

    it("takes success codes as a list or a single code", function()
      assert.are.same({ 0, 143 }, accepts({ success_codes = { 0, 143 } }).success_codes)
      assert.are.same({ 3 }, accepts({ success_codes = 3 }).success_codes)
      refuses({ success_codes = { 0, 256 } }, "'success_codes' item 2 must be an exit code from 0 to 255, got number 256")
      refuses({ success_codes = { 1.5 } }, "item 1 must be an exit code")
      refuses({ success_codes = "0" }, "'success_codes' must be a list of exit codes")
    end)

    it("normalises success signals without the SIG prefix", function()
      assert.are.same({ "TERM", "HUP", "INT" }, accepts({ success_signals = { "SIGTERM", "hup", "INT" } }).success_signals)
      assert.are.same({ "USR1" }, accepts({ success_signals = "USR1" }).success_signals)
      refuses({ success_signals = { "TERM", "NOPE" } }, [['success_signals' item 2 must be a signal name like "TERM", got string "NOPE"]])
      refuses({ success_signals = { 15 } }, "item 1 must be a signal name", "got number 15")
    end)

    it("takes max_restarts as an integer >= 0", function()
      assert.are.equal(0, accepts({ max_restarts = 0 }).max_restarts)
      refuses({ max_restarts = -1 }, "'max_restarts' must be an integer >= 0, got number -1")
      refuses({ max_restarts = 1.5 }, "got number 1.5")
    end)

    it("takes max_seconds and cooldown as positive durations", function()
      local s = accepts { max_seconds = "1m", cooldown = "5m" }
      assert.are.equal(60, s.max_seconds)
      assert.are.equal(300, s.cooldown)
      refuses({ max_seconds = 0 }, "'max_seconds' must be a duration greater than 0, got number 0")
      refuses({ cooldown = "0s" }, "'cooldown' must be a duration greater than 0")
      local err = refuses({ max_seconds = "1 fortnight" })
      assert.are.equal(PATH .. [[: child 'web': 'max_seconds' must be a duration like "250ms" or "1m30s", got string "1 fortnight": unknown unit "fortnight" at position 3 (units: ns, us, ms, s, m, h, d)]], err)
    end)
  end)

  describe("backoff", function()
    it("fills what is not given", function()
      local s = accepts { backoff = { initial = "1s", factor = 3 } }
      assert.are.same({ initial = 1, max = 30, factor = 3, jitter = 0.1, reset_after = 10 }, s.backoff)
    end)

    it("reads durations and numbers", function()
      local s = accepts { backoff = { initial = "250ms", max = "1m", jitter = 0, reset_after = "2m", factor = 1 } }
      assert.are.same({ initial = 0.25, max = 60, factor = 1, jitter = 0, reset_after = 120 }, s.backoff)
    end)

    it("refuses bad values", function()
      refuses({ backoff = { initial = "5 parsecs" } }, [['backoff.initial' must be a duration like "250ms" or "1m30s", got string "5 parsecs": unknown unit]])
      refuses({ backoff = { factor = 0.5 } }, "'backoff.factor' must be a number >= 1, got number 0.5")
      refuses({ backoff = { jitter = 1.5 } }, "'backoff.jitter' must be a fraction from 0 to 1")
      refuses({ backoff = { jitter = -0.1 } }, "'backoff.jitter' must be")
      refuses({ backoff = { initial = "10s", max = "1s" } }, "'backoff.max' must be a duration of at least backoff.initial (10s), got string \"1s\"")
      refuses({ backoff = { reset_after = -1 } }, "'backoff.reset_after'", "durations cannot be negative")
      refuses({ backoff = "fast" }, "'backoff' must be a table")
    end)

    it("suggests the closest key for a typo", function()
      local err = refuses { backoff = { intial = "1s" } }
      assert.are.equal(PATH .. ": child 'web': unknown field 'backoff.intial' (did you mean 'backoff.initial'?)", err)
    end)
  end)

  describe("shutdown and stop_signal", function()
    it("reads a duration as a graceful stop", function()
      assert.are.same({ timeout = 10, brutal = false }, accepts({ shutdown = "10s" }).shutdown)
      assert.are.same({ timeout = 0, brutal = false }, accepts({ shutdown = 0 }).shutdown)
    end)

    it("reads brutal_kill", function()
      assert.are.same({ timeout = 0, brutal = true }, accepts({ shutdown = "brutal_kill" }).shutdown)
    end)

    it("refuses anything else", function()
      local err = refuses { shutdown = "soon" }
      assert.are.equal(PATH .. [[: child 'web': 'shutdown' must be a duration like "5s" or "brutal_kill", got string "soon"]], err)
      refuses({ shutdown = "5 parsecs" }, 'unknown unit "parsecs"')
      refuses({ shutdown = -1 }, "durations cannot be negative")
      refuses({ shutdown = {} }, "got a table")
    end)

    it("normalises the stop signal", function()
      assert.are.equal("INT", accepts({ stop_signal = "SIGINT" }).stop_signal)
      assert.are.equal("QUIT", accepts({ stop_signal = "quit" }).stop_signal)
      refuses({ stop_signal = "TREM" }, [['stop_signal' must be a signal name like "TERM" or "SIGHUP", got string "TREM"]])
      refuses({ stop_signal = 15 }, "got number 15")
    end)
  end)

  describe("readiness", function()
    it("defaults to immediate and accepts the word", function()
      assert.are.same({ kind = "immediate" }, accepts({ readiness = "immediate" }).readiness)
    end)

    it("compiles a pattern and keeps its source", function()
      local grammar = require "pogo.grammar"
      local r = accepts({ readiness = { pattern = "Listening on *" } }).readiness
      assert.are.equal("pattern", r.kind)
      assert.are.equal("Listening on *", r.source)
      assert.are.equal("any", r.stream)
      assert.are.equal(30, r.timeout)
      assert.is_true(grammar.match(r.pattern, "2024 Listening on :80"))
      assert.is_false(grammar.match(r.pattern, "Starting"))
    end)

    it("takes the stream and timeout of a pattern", function()
      local r = accepts({ readiness = { pattern = "up", stream = "stderr", timeout = "5s" } }).readiness
      assert.are.equal("stderr", r.stream)
      assert.are.equal(5, r.timeout)
      refuses({ readiness = { pattern = "up", stream = "both" } }, [['readiness.stream' must be "stdout", "stderr" or "any", got string "both"]])
      refuses({ readiness = { pattern = "" } }, [['readiness.pattern' must be a readiness pattern like "listening on *", got string "": empty readiness pattern]])
      refuses({ readiness = { pattern = "a\\" } }, "nothing to escape after the backslash")
    end)

    it("reads a tcp port or address", function()
      assert.are.same({ kind = "tcp", host = "127.0.0.1", port = 8080, timeout = 30, interval = 0.1 },
        accepts({ readiness = { tcp = 8080 } }).readiness)
      local r = accepts({ readiness = { tcp = "db.local:5432", timeout = "1m", interval = "1s" } }).readiness
      assert.are.same({ kind = "tcp", host = "db.local", port = 5432, timeout = 60, interval = 1 }, r)
      assert.are.equal("127.0.0.1", accepts({ readiness = { tcp = ":9000" } }).readiness.host)
      assert.are.equal(9000, accepts({ readiness = { tcp = "9000" } }).readiness.port)
      assert.are.equal("::1", accepts({ readiness = { tcp = "[::1]:9000" } }).readiness.host)
    end)

    it("refuses bad tcp targets", function()
      refuses({ readiness = { tcp = 0 } }, [['readiness.tcp' must be a port from 1 to 65535 or "host:port", got number 0]])
      refuses({ readiness = { tcp = "db.local" } }, "'readiness.tcp' must be an address like", "missing port")
      refuses({ readiness = { tcp = true } }, "'readiness.tcp' must be an address", "got boolean true")
    end)

    it("reads sd_notify readiness", function()
      assert.are.same({ kind = "notify", timeout = 10 }, accepts({ readiness = { notify = true, timeout = 10 } }).readiness)
      refuses({ readiness = { notify = "yes" } }, [['readiness.notify' must be true, got string "yes"]])
    end)

    it("reads a Lua check", function()
      local fn = function() return true end
      assert.are.same({ kind = "lua", check = fn, interval = 1, timeout = 30 }, accepts({ readiness = { check = fn } }).readiness)
      local r = accepts({ readiness = { check = fn, interval = "250ms" } }).readiness
      assert.are.equal(0.25, r.interval)
      refuses({ readiness = { check = "curl" } }, "'readiness.check' must be a function(child) returning true once ready")
    end)

    it("wants exactly one kind and only its options", function()
      refuses({ readiness = {} }, [['readiness' must be "immediate" or a table with one of pattern, tcp, notify or check, got a table]])
      refuses({ readiness = "ready" }, [[got string "ready"]])
      refuses({ readiness = { pattern = "x", tcp = 80 } }, "'readiness' must name one kind, got both 'pattern' and 'tcp'")
      refuses({ readiness = { tcp = 80, stream = "stdout" } }, "'readiness.stream' does not apply to tcp readiness")
      refuses({ readiness = { notify = true, interval = 1 } }, "'readiness.interval' does not apply to notify readiness")
      refuses({ readiness = { tcp = 80, timeout = 0 } }, "'readiness.timeout' must be a duration greater than 0")
      refuses({ readiness = { tpc = 80 } }, "unknown field 'readiness.tpc' (did you mean 'readiness.tcp'?)")
    end)
  end)

  describe("hooks and log", function()
    it("keeps hook functions", function()
      local fn = function() end
      assert.are.same({ on_exit = fn, on_give_up = fn }, accepts({ hooks = { on_exit = fn, on_give_up = fn } }).hooks)
    end)

    it("refuses unknown hooks and non-functions", function()
      refuses({ hooks = { on_exti = function() end } }, "unknown field 'hooks.on_exti' (did you mean 'hooks.on_exit'?)")
      refuses({ hooks = { on_start = "echo" } }, [['hooks.on_start' must be a function, got string "echo"]])
      refuses({ hooks = function() end }, "'hooks' must be a table of functions")
    end)

    it("reads log sizes and counts", function()
      local s = accepts { log = { max_size = "1MiB", max_files = 0, ring = 50 } }
      assert.are.same({ max_size = 1024 * 1024, max_files = 0, ring = 50 }, s.log)
      assert.are.same({ max_size = 10 * 1024 * 1024, max_files = 2, ring = 1000 }, accepts({ log = { max_files = 2 } }).log)
    end)

    it("refuses bad log settings", function()
      refuses({ log = { max_size = "1 furlong" } }, [['log.max_size' must be a size like "512MiB" or "10GB", got string "1 furlong"]])
      refuses({ log = { max_size = 0 } }, "'log.max_size' must be a size greater than 0")
      refuses({ log = { max_files = -1 } }, "'log.max_files' must be an integer >= 0")
      refuses({ log = { ring = 1.5 } }, "'log.ring' must be an integer >= 0")
      refuses({ log = { rotate = true } }, "unknown field 'log.rotate'")
    end)
  end)

  describe("placement fields", function()
    it("accepts tags, weight, partition and node", function()
      local s = accepts { tags = { "web", "ssd" }, weight = 2.5, partition = "quorum", node = "web-1" }
      assert.are.same({ "web", "ssd" }, s.tags)
      assert.are.equal(2.5, s.weight)
      assert.are.equal("quorum", s.partition)
      assert.are.equal("web-1", s.node)
    end)

    it("refuses bad placement fields", function()
      refuses({ tags = "web" }, "'tags' must be a list of strings")
      refuses({ tags = { "a", "" } }, [['tags' item 2 must be a non-empty string, got string ""]])
      refuses({ weight = 0 }, "'weight' must be a number greater than 0, got number 0")
      refuses({ weight = math.huge }, "'weight' must be a number greater than 0")
      refuses({ partition = "majority" }, [['partition' must be "available" or "quorum", got string "majority"]])
      refuses({ node = "web 1" }, "'node' must be a node name")
    end)
  end)

  describe("unknown fields", function()
    it("are errors with a suggestion", function()
      local err = refuses { restrat = "transient" }
      assert.are.equal(PATH .. ": child 'web': unknown field 'restrat' (did you mean 'restart'?)", err)
      refuses({ max_restart = 1 }, "(did you mean 'max_restarts'?)")
    end)

    it("are errors without a suggestion when nothing is close", function()
      local err = refuses { zzzzzzzz = 1 }
      assert.are.equal(PATH .. ": child 'web': unknown field 'zzzzzzzz'", err)
    end)

    it("include positional values", function()
      refuses({ "web" }, "child 'web': unexpected positional value [1]: fields are named")
    end)

    it("refuses an item that is not a table", function()
      local _, err = spec.normalise("web", { path = PATH, index = 2 })
      assert.are.equal(PATH .. [[: item 2 must be a spec table, got string "web"]], err)
    end)
  end)

  describe("error lines", function()
    local SRC = [[
return {
  {
    id = "api",
    cmd = "api",
    restart = "transient",
  },
  {
    restart = "always",
    id = "web",
    cmd = "web",
    backoff = {
      max = "1s",
      initial = "2s",
    },
    env = { A = 1,
      B = true },
  },
}
]]

    local function err_of(t)
      local _, err = spec.normalise(t, { path = "c.lua", src = SRC, index = 2 })
      return err
    end

    it("finds the field inside its own child, written before or after the id", function()
      local err = err_of { id = "web", cmd = "web", restart = "always" }
      assert.matches("^c%.lua:8: child 'web': 'restart'", err)
    end)

    it("finds nested fields inside their table", function()
      assert.matches("^c%.lua:12: child 'web': 'backoff%.max'",
        err_of { id = "web", cmd = "web", backoff = { max = "1s", initial = "2s" } })
      assert.matches("^c%.lua:16: child 'web': 'env%.B'",
        err_of { id = "web", cmd = "web", env = { A = 1, B = true } })
    end)

    it("points at the child's id for a missing field", function()
      assert.matches("^c%.lua:9: child 'web': 'cmd' must be", err_of { id = "web" })
    end)

    it("points at a bad id where it is written", function()
      local src = 'return {\n  { id = "ok", cmd = "x" },\n  { id = "not ok", cmd = "x" },\n}'
      local _, err = spec.normalise({ id = "not ok", cmd = "x" }, { path = "c.lua", src = src, index = 2 })
      assert.matches("^c%.lua:3: item 2: 'id'", err)
    end)

    it("ignores keys in strings and comments", function()
      local src = 'return {\n  -- restart = "x"\n  id = "web", cmd = "restart = 1",\n  restart = "always" }'
      local _, err = spec.normalise({ id = "web", cmd = "restart = 1", restart = "always" }, { path = "c.lua", src = src })
      assert.matches("^c%.lua:4:", err)
    end)

    it("falls back to the file name when the field cannot be found", function()
      local _, err = spec.normalise({ id = "web", cmd = "x", restart = "always" }, { path = "c.lua", src = "return x" })
      assert.matches("^c%.lua: child 'web'", err)
    end)
  end)

  describe("load_file", function()
    local paths = {}

    local function file(text)
      local p = helper.tmpfile(text)
      paths[#paths + 1] = p
      return p
    end

    local function quoted(p) return (p:gsub("%p", "%%%0")) end

    after_each(function()
      for _, p in ipairs(paths) do os.remove(p) end
      paths = {}
    end)

    it("loads a file returning one spec as a list of one", function()
      local p = file 'return { id = "web", cmd = "sleep 100", cwd = "data" }'
      local list = assert(spec.load_file(p))
      assert.are.equal(1, #list)
      assert.are.equal("web", list[1].id)
      assert.are.same({ "sleep", "100" }, list[1].cmd)
      assert.are.equal(p, list[1].file)
      assert.are.equal(p:match("^(.*)/") .. "/data", list[1].cwd)
    end)

    it("loads a list generated by a loop", function()
      local p = file [[
        local list = {}
        for _, name in ipairs { "a", "b", "c" } do
          list[#list + 1] = { id = "poll-" .. name, cmd = { "poller", name }, restart = "transient" }
        end
        return list
      ]]
      local list = assert(spec.load_file(p))
      assert.are.equal(3, #list)
      for i, name in ipairs { "a", "b", "c" } do
        assert.are.equal("poll-" .. name, list[i].id)
        assert.are.same({ "poller", name }, list[i].cmd)
      end
    end)

    it("accepts an empty list", function()
      assert.are.same({}, spec.load_file(file "return {}"))
    end)

    it("refuses duplicate ids within a file, naming the line", function()
      local p = file 'return {\n  -- { id = "a" } was here\n  { id = "a", cmd = "x" },\n  { id = "a", cmd = "y" },\n}'
      local list, err = spec.load_file(p)
      assert.is_nil(list)
      assert.are.equal(p .. ":4: child 'a': duplicate id (item 1 has it too)", err)
    end)

    it("turns an error raised by a metamethod of the returned table into the file's error", function()
      local p = file 'return setmetatable({}, { __index = function() error("boom", 0) end })'
      local list, err = spec.load_file(p)
      assert.is_nil(list)
      assert.are.equal(p .. ": boom", err)
    end)

    it("keeps nothing from a file with a syntax error", function()
      local p = file 'return {\n  { id = "a", cmd = "x" },\n  { id = "b" cmd = "y" },\n}'
      local list, err = spec.load_file(p)
      assert.is_nil(list)
      assert.matches("^" .. quoted(p) .. ":3:", err)
    end)

    it("keeps nothing when one spec of the list is bad", function()
      local p = file 'return {\n  { id = "a", cmd = "x" },\n  { id = "b", cmd = "y", restart = "never" },\n}'
      local list, err = spec.load_file(p)
      assert.is_nil(list)
      assert.matches("^" .. quoted(p) .. [[:3: child 'b': 'restart' must be]], err)
    end)

    it("names the file and line of an undefined global", function()
      local p = file 'local port = 80\nreturn { id = "a", cmd = { "x", tostring(prot) } }'
      local list, err = spec.load_file(p)
      assert.is_nil(list)
      assert.are.equal(p .. ":2: undefined global 'prot'", err)
    end)

    it("offers the extra globals of opts.env", function()
      local p = file 'return { id = pogo.prefix .. "-a", cmd = "x" }'
      local list = assert(spec.load_file(p, { env = { pogo = { prefix = "n1" } } }))
      assert.are.equal("n1-a", list[1].id)
    end)

    it("refuses files that return no spec", function()
      local _, err = spec.load_file(file "return 42")
      assert.matches(": a spec file must return a spec table or a list of them, got number 42$", err)
      _, err = spec.load_file(file "local x = 1")
      assert.matches("got nothing$", err)
      _, err = spec.load_file(file 'return { { id = "a", cmd = "x" }, id = "b" }')
      assert.matches("not a mix of both$", err)
      _, err = spec.load_file(file 'return { { id = "a", cmd = "x" }, "b" }')
      assert.matches(": item 2 must be a spec table, got string \"b\"$", err)
    end)

    it("reports a missing file", function()
      local list, err = spec.load_file("/nonexistent/pogo/x.lua")
      assert.is_nil(list)
      assert.matches("No such file", err)
    end)
  end)

  describe("fingerprint", function()
    local paths = {}
    after_each(function()
      for _, p in ipairs(paths) do os.remove(p) end
      paths = {}
    end)

    local function load_text(text)
      local p = helper.tmpfile(text)
      paths[#paths + 1] = p
      return assert(spec.load_file(p))
    end

    local TEXT = [[
      local list = {}
      for i, name in ipairs { "a", "b" } do
        list[#list + 1] = {
          id = name, cmd = { "worker", name }, env = { N = i },
          readiness = { pattern = "up on *" },
          hooks = { on_exit = function(child, status) return name, status end },
          backoff = { initial = "1s" },
        }
      end
      return list
    ]]

    it("is equal for two loads of the same text", function()
      -- Same text at two paths would differ by file; reuse one path.
      local p = helper.tmpfile(TEXT)
      paths[#paths + 1] = p
      local a, b = assert(spec.load_file(p)), assert(spec.load_file(p))
      assert.are_not.equal(a[1].hooks.on_exit, b[1].hooks.on_exit)
      assert.are.equal(spec.fingerprint(a[1]), spec.fingerprint(b[1]))
      assert.are.equal(spec.fingerprint(a[2]), spec.fingerprint(b[2]))
    end)

    it("does not depend on the order fields were written in", function()
      local a = assert(spec.normalise({ id = "x", cmd = "a", env = { A = "1", B = "2" }, restart = "transient" }))
      local b = assert(spec.normalise({ restart = "transient", env = { B = "2", A = "1" }, cmd = { "a" }, id = "x" }))
      assert.are.equal(spec.fingerprint(a), spec.fingerprint(b))
    end)

    it("tells apart closures that differ only in what they capture", function()
      local list = load_text(TEXT)
      assert.are_not.equal(spec.fingerprint(list[1].hooks), spec.fingerprint(list[2].hooks))
    end)

    it("changes when any field changes", function()
      local base = { id = "x", cmd = "a" }
      local fp = spec.fingerprint(assert(spec.normalise(base, { path = "/c/x.lua" })))
      local changes = {
        { id = "y" }, { cmd = "b" }, { env = { A = 1 } }, { clear_env = true }, { cwd = "/tmp" },
        { user = "nobody" }, { group = 0 }, { umask = "077" }, { rlimits = { nofile = 10 } },
        { restart = "transient" }, { success_codes = { 0, 1 } }, { success_signals = { "TERM" } },
        { max_restarts = 6 }, { max_seconds = 11 }, { backoff = { jitter = 0.2 } }, { cooldown = 61 },
        { shutdown = "brutal_kill" }, { shutdown = "6s" }, { stop_signal = "INT" },
        { readiness = { tcp = 80 } }, { readiness = { pattern = "x" } }, { readiness = { notify = true } },
        { hooks = { on_exit = function() end } }, { log = { ring = 10 } }, { tags = { "t" } },
        { weight = 2 }, { partition = "quorum" }, { node = "n1" },
      }
      for _, change in ipairs(changes) do
        local t = { id = "x", cmd = "a" }
        for k, v in pairs(change) do t[k] = v end
        local s = assert(spec.normalise(t, { path = "/c/x.lua" }))
        assert.are_not.equal(fp, spec.fingerprint(s), next(change))
      end
      local moved = assert(spec.normalise(base, { path = "/c/y.lua" }))
      assert.are_not.equal(fp, spec.fingerprint(moved))
    end)

    it("changes with a hook's code and with a readiness pattern's text", function()
      local function fp(t) return spec.fingerprint(assert(spec.normalise(t))) end
      assert.are_not.equal(
        fp { id = "x", cmd = "a", hooks = { on_exit = function() return 1 end } },
        fp { id = "x", cmd = "a", hooks = { on_exit = function() return 2 end } })
      assert.are_not.equal(
        fp { id = "x", cmd = "a", readiness = { pattern = "up" } },
        fp { id = "x", cmd = "a", readiness = { pattern = "ready" } })
      assert.are.equal(
        fp { id = "x", cmd = "a", readiness = { pattern = "up" } },
        fp { id = "x", cmd = "a", readiness = { pattern = "up" } })
    end)

    it("names the agent's API in a hook's upvalues instead of reading its changing state", function()
      local api = { errors = {}, log = { info = function() end } }
      local p = helper.tmpfile 'local pogo = pogo\nreturn { id = "a", cmd = "x", hooks = { on_exit = function() pogo.log.info("x") end } }'
      paths[#paths + 1] = p
      local a = assert(spec.load_file(p, { env = { pogo = api } }))[1]
      api.errors["/x.lua"] = "broken"
      local b = assert(spec.load_file(p, { env = { pogo = api } }))[1]
      assert.are.equal(spec.fingerprint(a), spec.fingerprint(b))
      assert.matches("gpogo", spec.fingerprint(a), 1, true)
    end)

    it("tells integers from strings and survives cyclic upvalues", function()
      local function fp(t) return spec.fingerprint(assert(spec.normalise(t))) end
      assert.are_not.equal(fp { id = "x", cmd = "a", env = { A = 1 }, tags = { "1" } },
        fp { id = "x", cmd = "a", env = { A = 1 }, tags = { "01" } })
      local cyc = {}
      cyc.self = cyc
      local hook = function() return cyc end
      assert.is_string(fp { id = "x", cmd = "a", hooks = { on_exit = hook } })
    end)
  end)
end)
