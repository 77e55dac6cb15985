-- A singleton that must never run twice, even across a partition: it runs
-- only on a side that hears from a majority of `expect` (3) nodes, and moves
-- stop-first. Kill its node and watch it start elsewhere a few seconds later.
return {
  id = "singleton",
  partition = "quorum",
  cmd = { "sh", "-c", "echo singleton up on $POGO_NODE, generation $POGO_GENERATION; while :; do sleep 10; echo still the only one; done" },
  readiness = { pattern = "singleton up on *" },
  shutdown = "1s",
}
