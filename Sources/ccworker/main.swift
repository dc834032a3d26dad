print("ccworker")
