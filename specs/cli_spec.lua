local helper = require "helper"

describe("#unit pogo.cli", function()
  local cli
  local cmd = {
    name = "t",
    options = {
      { "s", "socket", arg = "SOCKET" },
      { "j", "json" },
    },
  }

  before_each(function()
    helper.stub_core()
    cli = helper.fresh "pogo.cli"
  end)

  it("parses short, long, joined and = forms", function()
    local opts, pos = cli.parse(cmd, { "-s", "a", "x", "--json", "y" })
    assert.are.same({ socket = "a", json = true }, opts)
    assert.are.same({ "x", "y" }, pos)
    opts = cli.parse(cmd, { "-sb" })
    assert.are.same({ socket = "b" }, opts)
    opts = cli.parse(cmd, { "--socket=c" })
    assert.are.same({ socket = "c" }, opts)
  end)

  it("stops at --", function()
    local opts, pos = cli.parse(cmd, { "--", "-s", "--json" })
    assert.are.same({}, opts)
    assert.are.same({ "-s", "--json" }, pos)
  end)

  it("keeps a lone - as an argument", function()
    local _, pos = cli.parse(cmd, { "-" })
    assert.are.same({ "-" }, pos)
  end)

  it("names the offending option", function()
    assert.are.same({ nil, "unknown option '--nope'" }, { cli.parse(cmd, { "--nope" }) })
    assert.are.same({ nil, "unknown option '-x'" }, { cli.parse(cmd, { "-x" }) })
    assert.are.same({ nil, "option '--socket' needs a value (SOCKET)" }, { cli.parse(cmd, { "-s" }) })
    assert.are.same({ nil, "option '--json' takes no value" }, { cli.parse(cmd, { "--json=1" }) })
  end)

  it("prefers -s, then POGO_SOCKET", function()
    assert.are.equal("/x.sock", cli.socket_path { socket = "/x.sock" })
  end)

  it("finds the only socket in the run directory", function()
    helper.stub_core { sys = { dir = function() return { "a.sock", "notes.txt" } end } }
    cli = helper.fresh "pogo.cli"
    if os.getenv("POGO_SOCKET") then return end
    assert.are.equal("/tmp/pogo-1000/a.sock", cli.socket_path {})
  end)

  it("refuses to guess between several agents", function()
    helper.stub_core { sys = { dir = function() return { "a.sock", "b.sock" } end } }
    cli = helper.fresh "pogo.cli"
    if os.getenv("POGO_SOCKET") then return end
    local p, err = cli.socket_path {}
    assert.is_nil(p)
    assert.matches("several agents", err)
  end)
end)
