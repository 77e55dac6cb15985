return { name = "web-1" }
