return { name = "n", tagz = { "a" } }
