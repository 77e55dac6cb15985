local x = nope
return { id = "u", cmd = { "x" } }
