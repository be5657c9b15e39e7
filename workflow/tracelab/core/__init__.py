"""What every stage shares: table declarations, config defaults, atomic writers, errors, safe
text."""
