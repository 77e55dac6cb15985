local t = setmetatable({}, {__gc = function() while true do end end}) t = nil collectgarbage = nil
return {id="g", cmd="true"}
