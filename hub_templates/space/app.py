"""Entry file of the repair Space: build the Gradio app and launch it.

The Space runs ``python app.py``. Gradio reads the host and port from the Space's environment.
"""

from ui.app import build_ui, launch_options

demo = build_ui()

if __name__ == "__main__":
    demo.launch(**launch_options())
