"""One module per command beyond render (refresh, guard, status, policy, doctor); may import anything."""
