"""The application shell: the root `gateway` command and the tools that span every area
(the demo, chaos runs, ground-truth verification). Nothing below imports it."""
