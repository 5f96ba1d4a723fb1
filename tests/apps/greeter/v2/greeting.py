def greet(path):
    return "v2 " + path
