-- luacheck: the Lua library must be free of undefined globals, shadowing
-- mistakes and dead code. Methods may ignore self.
std = "lua54"
max_line_length = false
ignore = { "212/self" }
files["specs/"] = { std = "+busted" }
