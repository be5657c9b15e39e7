"""Which window features survive a change of recording conditions (issue 14)."""
