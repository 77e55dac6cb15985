return {
  name = "n",
  listen = "300.1.1.1:99999",
  log = { level = "loud" },
}
