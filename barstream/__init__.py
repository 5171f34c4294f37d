"""barstream command line."""
