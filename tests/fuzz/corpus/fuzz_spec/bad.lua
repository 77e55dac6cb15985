return {
  id = "bad",
  cmd = "a | b",
  restart = "sometimes",
}
