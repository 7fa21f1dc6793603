"""Views of the aggregates: the live terminal table (and, later, web and query API)."""
