return setmetatable({}, {__index = function() error("boom", 0) end})
