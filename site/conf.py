"""Sphinx settings of the course site (`make site`, tools/course_site.py): the committed notebooks with
their stored outputs (never executed here), rendered by myst-nb in sphinx-book-theme."""

project = "Saving and loading PyTorch models"
author = ""  # the footer carries the course's credit line instead (README, "License, citing and reuse")
html_show_copyright = False
extensions = ["myst_nb", "sphinx_copybutton", "sphinx_design"]

# tools/course_site.py stages the notebooks and these pages into one folder and builds it
root_doc = "index"
exclude_patterns = ["_build", "**.ipynb_checkpoints", "README.md"]  # README: only included
nb_execution_mode = "off"  # the stored outputs, proven by CI (strict nbval); nothing runs here
nb_merge_streams = True
nb_render_error_lexer = "text"  # a minimal traceback is prose, not Python: no false keywords
myst_enable_extensions = ["colon_fence", "html_image"]
myst_heading_anchors = 3
nb_code_prompt_show = "Show the solution"
nb_code_prompt_hide = "Hide the solution"

html_theme = "sphinx_book_theme"
html_title = "Saving and loading PyTorch models"
html_static_path = ["_static"]
html_css_files = ["course.css"]
html_last_updated_fmt = None
html_copy_source = False
# search results list pages without a summary: a summary is fetched from each page, which a browser
# refuses for a site opened from disk (file://); the search itself works offline either way
html_show_search_summary = False
html_show_sourcelink = False
# the theme reads the reader's choice (light, dark, auto) from localStorage, empty on a first visit:
# without a default it logs a console error there
html_context = {"default_mode": "auto"}
html_theme_options = {
    "show_toc_level": 2,
    "navigation_with_keys": False,
    "use_download_button": False,
    "use_fullscreen_button": False,
    "home_page_in_toc": True,
    "extra_footer": (
        '<p class="course-credit">"Saving and loading PyTorch models: a course that runs" '
        "(CC BY 4.0 for text, MIT for code). Reuse it with this credit line, a link to the "
        "course's repository and a note of what you changed; the repository's LICENSE says which covers what.</p>"
    ),
}
# copy buttons leave out prompts and outputs
copybutton_exclude = ".linenos, .gp, .go"
