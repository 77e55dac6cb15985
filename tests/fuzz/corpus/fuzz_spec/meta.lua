return setmetatable({ id = "m", cmd = "true" }, { __index = function(t, k) return rawget(t, k) end })
