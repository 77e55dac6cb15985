local dir = os.getenv("HOME") or "/tmp"
return { name = "n" .. math.floor(1.5), run_dir = dir .. "/run", weight = 2 ^ 0.5, tags = { ("%s"):format("x") } }
