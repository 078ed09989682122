"""Authorization, quota and content rules. Pure logic: never imports gateway internals."""
