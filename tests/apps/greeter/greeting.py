def greet(path):
    return "v1 " + path
