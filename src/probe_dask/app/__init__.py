"""The application: the whole job as a library function, the command line, the demo."""
