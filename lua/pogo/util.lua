-- pogo.util: small helpers shared by the modules that read user files.

local M = {}

--- The directory part of a path ("." for a bare name).
function M.dirname(path)
  return path:match("^(.*)/[^/]*$") or "."
end

--- The last component of a path.
function M.basename(path)
  return path:match("([^/]*)$")
end

--- Levenshtein distance between two strings.
function M.distance(a, b)
  local prev = {}
  for j = 0, #b do prev[j] = j end
  for i = 1, #a do
    local cur = { [0] = i }
    for j = 1, #b do
      local cost = a:sub(i, i) == b:sub(j, j) and 0 or 1
      cur[j] = math.min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + cost)
    end
    prev = cur
  end
  return prev[#b]
end

--- The name in `names` (a list) closest to `key`, within two edits, for
--- "did you mean" hints; ties go to the alphabetically first. Or nil.
function M.suggest(key, names)
  local best, bestd
  for _, k in ipairs(names) do
    local d = M.distance(key, k)
    if d <= 2 and (not bestd or d < bestd or (d == bestd and k < best)) then
      best, bestd = k, d
    end
  end
  return best
end

return M
