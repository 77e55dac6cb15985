local helper = require "helper"

describe("#unit pogo.control", function()
  local control
  local conn = { id = 1 }

  before_each(function()
    helper.stub_core()
    control = helper.fresh "pogo.control"
    control.agent.config = { name = "n1", eval_budget = 1 }
    control.agent.pogo = { answer = 42 }
  end)

  it("evaluates expressions and pretty-prints the results", function()
    local r = control.handle(conn, { op = "eval", code = "1 + 1, 'x'" })
    assert.are.same({ ok = true, n = 2, out = '2\n"x"' }, r)
  end)

  it("runs statements", function()
    local r = control.handle(conn, { op = "eval", code = "local a = 1 a = a + 1" })
    assert.are.same({ ok = true, n = 0 }, r)
  end)

  it("captures print", function()
    local r = control.handle(conn, { op = "eval", code = "print('a', 1) print('b')" })
    assert.are.equal("a\t1\nb\n", r.printed)
  end)

  it("keeps a session's globals per connection", function()
    control.handle(conn, { op = "eval", code = "x = 7" })
    assert.are.equal("7", control.handle(conn, { op = "eval", code = "x" }).out)
    assert.are.equal("nil", control.handle({ id = 2 }, { op = "eval", code = "x" }).out)
    control.closed(conn)
    assert.are.equal("nil", control.handle(conn, { op = "eval", code = "x" }).out)
    assert.is_nil(rawget(_G, "x"))
  end)

  it("sees the pogo API", function()
    assert.are.equal("42", control.handle(conn, { op = "eval", code = "pogo.answer" }).out)
  end)

  it("reports errors with a one-line message and the traceback apart", function()
    local r = control.handle(conn, { op = "eval", code = "error('boom')" })
    assert.is_false(r.ok)
    assert.are.equal("eval:1: boom", r.error)
    assert.matches("stack traceback", r.traceback)
    r = control.handle(conn, { op = "eval", code = "return +" })
    assert.is_false(r.ok)
    assert.matches("^eval:1:", r.error)
  end)

  it("answers an unknown op or a bad request with an error", function()
    assert.are.same({ ok = false, error = "unknown request 'nope'" }, control.handle(conn, { op = "nope" }))
    assert.is_false(control.handle(conn, { op = "eval" }).ok)
  end)

  it("answers groups without a cluster with an error, not a raise", function()
    package.loaded["pogo.dsup"] = { running = function() return false end }
    local r = control.handle(conn, { op = "groups" })
    package.loaded["pogo.dsup"] = nil
    assert.is_false(r.ok)
    assert.matches("needs the cluster", r.error)
  end)

  it("encodes JSON on request", function()
    local r = control.handle(conn, { op = "eval", code = "{ a = 1 }", json = true })
    assert.are.equal('{"a":1}', r.out)
    r = control.handle(conn, { op = "eval", code = "1, nil", json = true })
    assert.are.equal("[1,null]", r.out)
    r = control.handle(conn, { op = "eval", code = "print", json = true })
    assert.is_false(r.ok)
  end)

  it("answers ping with the node name", function()
    local r = control.handle(conn, { op = "ping" })
    assert.are.equal("n1", r.node)
    assert.are.equal(4242, r.pid)
  end)
end)
