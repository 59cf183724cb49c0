// integration tests (being written)
