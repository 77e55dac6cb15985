return setmetatable({ name = "m" }, { __pairs = function(t) return next, {}, nil end })
