"""Reports over results files: changes between kernels or runs, rendered as text, Markdown, HTML
and JUnit."""
