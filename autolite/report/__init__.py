"""Reports: before/after tables (markdown and terminal) and plots."""
