-- pogo.children: the children directory, the desired set of local specs.
--
-- Every *.lua file returns one spec or a list of them. A directory watch
-- (inotify) sees every save pattern; changes are debounced and then the
-- whole directory is re-read: a file whose text changed is re-evaluated,
-- all or nothing, and a file that fails keeps its previous generation
-- (the error is kept for pogo.errors() and `pogo check`). An id defined
-- in two files belongs to the first file by name; the other file is an
-- error.

local fswatch = require "pogo.core.fswatch"
local log = require "pogo.log"
local loop = require "pogo.core.loop"
local sandbox = require "pogo.sandbox"
local spec = require "pogo.spec"
local sys = require "pogo.core.sys"

local L = log.sub("children")

local M = {}

M.DEBOUNCE = 0.05       -- a burst of saves is applied once

--- A source of specs: new(dir, opts) with opts.on_change(specs_by_id, files),
--- opts.errors (path -> message table to fill), opts.budget.
function M.new(dir, opts)
  return setmetatable({
    dir = dir,
    on_change = opts.on_change,
    errors = opts.errors or {},
    budget = opts.budget,
    files = {},          -- path -> { src = text, specs = list } of the last good load
    watch = nil,
    timer = nil,
  }, { __index = M })
end

--- Re-reads the directory; returns the desired set (id -> spec).
function M:scan()
  local names, derr = sys.dir(self.dir)
  if not names then
    self.errors[self.dir] = derr
    L.error("cannot read the children directory: %s", derr)
    names = {}
  else
    self.errors[self.dir] = nil
  end
  local seen, desired, owner = {}, {}, {}
  for _, name in ipairs(names) do
    if name:match("%.lua$") and not name:match("^%.") then
      local path = self.dir .. "/" .. name
      seen[path] = true
      local src, err = sandbox.read(path)
      local prev = self.files[path]
      local specs
      if src and prev and prev.src == src and not self.errors[path] then
        specs = prev.specs                       -- unchanged text: no re-evaluation
      else
        if src then
          specs, err = spec.load_file(path, { budget = self.budget, env = { pogo = require "pogo" }, src = src })
        end
        if specs then
          self.files[path] = { src = src, specs = specs }
          self.errors[path] = nil
        else
          self.errors[path] = err
          L.error("%s (keeping its previous version)", err)
          specs = prev and prev.specs or {}
        end
      end
      -- First file by name owns an id; a later file defining it is an error.
      local clash
      for _, s in ipairs(specs) do
        if owner[s.id] then clash = s.id break end
      end
      if clash then
        self.errors[path] = ("%s: child '%s' is already defined in %s"):format(path, clash, owner[clash])
        L.error("%s", self.errors[path])
      else
        for _, s in ipairs(specs) do
          owner[s.id] = path
          desired[s.id] = s
        end
      end
    end
  end
  for path in pairs(self.files) do
    if not seen[path] then
      self.files[path] = nil
      self.errors[path] = nil
    end
  end
  return desired
end

--- Scans now and reports the desired set (id -> spec) and the files (path
--- -> { src = text, specs = list }) to on_change.
function M:apply()
  self.on_change(self:scan(), self.files)
end

--- Starts watching; the first scan happens at once.
function M:start()
  local w, err = fswatch.dir(self.dir, function(name)
    if name and not name:match("%.lua$") then return end
    if self.timer then
      self.timer:again(M.DEBOUNCE, 0)
    else
      self.timer = loop.timer(M.DEBOUNCE, 0, function() self:apply() end)
    end
  end)
  if not w then
    self.errors[self.dir] = err
    L.error("cannot watch %s: %s (changes need SIGHUP)", self.dir, err)
  end
  self.watch = w
  self:apply()
end

function M:close()
  if self.watch then self.watch:close() self.watch = nil end
  if self.timer then self.timer:close() self.timer = nil end
end

return M
