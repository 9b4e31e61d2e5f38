"""Command-line programs: each module's `main` parses flags and calls the library."""
