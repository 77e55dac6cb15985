return { { id = "x", cmd = "true" }, { id = "x", cmd = "false" } }
