-- What the oracles of the fuzz drivers share (loaded with dofile: the
-- drivers are not modules of the library).
local M = {}

--- Raises the message (an oracle broke) unless cond.
function M.check(cond, fmt, ...)
  if not cond then error(fmt:format(...), 2) end
end

--- Whether v is a list, nothing but 1..n, of values of type kind.
function M.is_list_of(v, kind)
  if type(v) ~= "table" then return false end
  local n = 0
  for _, x in pairs(v) do
    if type(x) ~= kind then return false end
    n = n + 1
  end
  return n == #v
end

--- A failed load's message must be a string naming the file at path.
function M.names_file(err, path)
  M.check(type(err) == "string", "the error is a %s", type(err))
  M.check(err:sub(1, #path) == path, "the error does not name the file: %s", err)
end

return M
