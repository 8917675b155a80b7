"""Lightning callbacks that every run can use (configured under conf/callbacks/)."""
