"""The Gradio app of repair."""
