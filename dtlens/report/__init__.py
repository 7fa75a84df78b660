"""The reproduction report: Markdown and HTML from a reproduction folder's saved results."""
