#ifndef NATCHAT_CREADLINE_H
#define NATCHAT_CREADLINE_H

/* natchat's shim over GNU readline's callback interface.
 *
 * readline keeps its state in C globals. Every function here must be called from one
 * thread (LineEditor's terminal thread). The shim owns the completion word lists and the
 * line the callback handler produced, so Swift never touches a readline global. */

#include <stddef.h>

/* Installs the callback handler with `prompt`, turns off readline's own signal handling
 * (natchat handles SIGINT/SIGTERM itself) and sets up completion. */
void natchat_rl_install(const char *prompt);

/* Removes the handler and restores the terminal. */
void natchat_rl_remove(void);

/* Reads one character from stdin (call when stdin is readable). */
void natchat_rl_read_char(void);

/* After natchat_rl_read_char: 1 and *line set (malloc'ed, caller frees) when a line was
 * completed, 2 at end of input (Ctrl-D on an empty line), 0 otherwise. */
int natchat_rl_take_line(char **line);

/* Prints `text` (which may hold several lines, no trailing newline needed) above the
 * prompt and redraws the prompt with the half-typed line intact. */
void natchat_rl_print_above(const char *text);

/* Replaces the completion words: commands complete the first word; peers complete the
 * word right after "@chat " or "@show_list " (the peer ID, the ID prefix), and nothing
 * after it. Strings are copied. */
void natchat_rl_set_commands(const char *const *words, int count);
void natchat_rl_set_peers(const char *const *words, int count);

/* Completion candidates for `line` (the whole buffer) when completing the word that
 * starts at `start` with prefix `text`; the same logic readline uses, callable from
 * tests. Returns a malloc'ed NULL-terminated array of malloc'ed strings, or NULL. */
char **natchat_rl_candidates(const char *line, int start, const char *text);

/* History: load from `path`, add a line, save keeping at most `max_entries`. */
int natchat_rl_history_load(const char *path);
void natchat_rl_history_add(const char *line);
int natchat_rl_history_save(const char *path, int max_entries);

/* Frees an array from natchat_rl_candidates. */
void natchat_rl_free_candidates(char **candidates);

#endif
