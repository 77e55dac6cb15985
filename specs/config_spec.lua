local helper = require "helper"

describe("#unit pogo.config", function()
  local config

  before_each(function()
    helper.stub_core()
    config = helper.fresh "pogo.config"
  end)

  local function validate(t, src)
    return config.validate(t, { path = "/etc/pogo/node.lua", src = src })
  end

  it("fills every default", function()
    local cfg = assert(validate {})
    assert.are.equal("spec-host", cfg.name)
    assert.are.equal("0.0.0.0:4370", cfg.listen)
    assert.are.same({}, cfg.seeds)
    assert.are.same({}, cfg.tags)
    assert.are.equal(1, cfg.weight)
    assert.are.equal(0.25, cfg.budget)
    assert.are.equal(5, cfg.eval_budget)
    assert.are.equal("info", cfg.log.level)
    assert.is_nil(cfg.log.file)
    assert.is_nil(cfg.children)
  end)

  it("puts the control socket under the run directory, named after the node", function()
    local cfg = assert(validate { name = "web-1" })
    assert.are.equal("/tmp/pogo-1000/web-1.sock", cfg.control)
    cfg = assert(validate { name = "web-1", run_dir = "/run/x" })
    assert.are.equal("/run/x/web-1.sock", cfg.control)
  end)

  it("uses /run/pogo for root", function()
    helper.stub_core { sys = { uid = function() return 0 end } }
    config = helper.fresh "pogo.config"
    assert.are.equal("/run/pogo", config.default_run_dir())
  end)

  it("resolves relative paths against the config file's directory", function()
    local cfg = assert(validate { children = "children.d", hooks = "/abs/hooks.lua" })
    assert.are.equal("/etc/pogo/children.d", cfg.children)
    assert.are.equal("/abs/hooks.lua", cfg.hooks)
  end)

  it("parses durations", function()
    local cfg = assert(validate { budget = "100ms", eval_budget = "1m30s" })
    assert.are.equal(0.1, cfg.budget)
    assert.are.equal(90, cfg.eval_budget)
  end)

  it("names the line, the key and a suggestion for an unknown key", function()
    local src = 'return {\n  name = "a",\n  lisen = "x",\n}\n'
    local cfg, err = validate({ name = "a", lisen = "x" }, src)
    assert.is_nil(cfg)
    assert.are.equal("/etc/pogo/node.lua:3: unknown key 'lisen' (did you mean 'listen'?)", err)
  end)

  it("gives no suggestion when nothing is close", function()
    local _, err = validate { zzzzzzzz = 1 }
    assert.are.equal("/etc/pogo/node.lua: unknown key 'zzzzzzzz'", err)
  end)

  it("refuses wrong types with what was expected and what was given", function()
    local _, err = validate({ weight = "heavy" }, "return {\n weight = 'heavy' }")
    assert.are.equal([[/etc/pogo/node.lua:2: 'weight' must be a positive number, got string "heavy"]], err)
    _, err = validate { tags = "web" }
    assert.matches("'tags' must be a list of strings", err)
    _, err = validate { tags = { "a", 3 } }
    assert.matches("'tags' item 2 must be a non%-empty string, got number 3", err)
    _, err = validate { seeds = { "host:notaport" } }
    assert.matches("'seeds' item 1", err)
    _, err = validate { name = "bad name" }
    assert.matches("'name' must be a node name", err)
    _, err = validate { budget = "soon" }
    assert.matches("'budget'", err)
    _, err = validate { budget = 0 }
    assert.matches("'budget' must be a positive duration", err)
  end)

  it("checks the nested log table", function()
    local _, err = validate { log = { level = "loud" } }
    assert.matches("'log.level' must be one of", err)
    _, err = validate { log = { colour = true } }
    assert.matches("unknown key 'log.colour'", err)
    _, err = validate { log = "debug" }
    assert.matches("'log' must be a table", err)
  end)

  it("refuses a file that does not return a table", function()
    local _, err = validate(42)
    assert.are.equal("/etc/pogo/node.lua: must return a table, got number", err)
  end)

  it("loads a real file through the sandbox", function()
    local path = helper.tmpfile('return { name = "n1", tags = { "a" } }')
    local cfg = assert(config.load(path))
    assert.are.equal("n1", cfg.name)
    assert.are.same({ "a" }, cfg.tags)
    os.remove(path)
  end)

  it("turns an error raised by a metamethod of the returned table into the file's error", function()
    local path = helper.tmpfile('return setmetatable({}, { __pairs = function() error("boom", 0) end })')
    local cfg, err = config.load(path)
    assert.is_nil(cfg)
    assert.are.equal(path .. ": boom", err)
    os.remove(path)
  end)

  it("reports a syntax error with file and line", function()
    local path = helper.tmpfile('return {\n name = "n1"\n tags = {} }')
    local cfg, err = config.load(path)
    assert.is_nil(cfg)
    assert.matches(path:gsub("%p", "%%%0") .. ":3:", err)
    os.remove(path)
  end)
end)
