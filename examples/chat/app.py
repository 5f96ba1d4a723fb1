"""The chat server as a script: `python app.py [--port 1701]`, or `gdsu-supervise app.py`.

Running a script puts its directory on `sys.path`, so the `chat` package beside it imports.
"""

from chat.server import main

if __name__ == "__main__":
    main()
