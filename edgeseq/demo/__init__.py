"""The built-in demo task: normalizing human-written dates ("Tuesday, 24 November 2026" -> "2026-11-24")."""
