-- pogo.log: leveled log lines from Lua, through the agent's one log sink.
--
--   log.info("started %s (pid %d)", id, pid)   -- string.format when args follow
--   log.warn(some_value)                       -- tostring otherwise
--   local L = log.sub("agent"); L.info(...)    -- a subsystem of our own

local core = require "pogo.core.log"

local M = {}

local function message(fmt, ...)
  if select("#", ...) == 0 then
    return tostring(fmt)
  end
  if type(fmt) == "string" then
    local ok, s = pcall(string.format, fmt, ...)
    if ok then return s end
  end
  -- A bad format string must not lose the line: show everything raw.
  local parts = { tostring(fmt) }
  for i = 1, select("#", ...) do
    parts[#parts + 1] = tostring((select(i, ...)))
  end
  return table.concat(parts, " ")
end

--- Loggers bound to one subsystem name (shown after the node name).
function M.sub(subsys)
  local L = {}
  for _, level in ipairs { "debug", "info", "warn", "error" } do
    L[level] = function(fmt, ...)
      if core.enabled(level) then
        core.write(level, subsys, message(fmt, ...))
      end
    end
  end
  return L
end

local user = M.sub("lua")
M.debug, M.info, M.warn, M.error = user.debug, user.info, user.warn, user.error

M.setup = core.setup
M.level = core.level
M.message = message

return M
