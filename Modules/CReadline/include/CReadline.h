#ifndef NATCHAT_CREADLINE_H
#define NATCHAT_CREADLINE_H

/* natchat's shim over GNU readline's callback interface.
 *
 * readline keeps its state in C globals. Every function here must be called from one
 * thread (LineEditor's terminal thread). The shim owns the command words, the commands
 * whose first argument is a peer ID, the peer-ID source and the line the callback handler
 * produced, so Swift never touches a readline global. */

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

/* Replaces the command words, which complete the first word of the line. Strings are
 * copied. */
void natchat_rl_set_commands(const char *const *words, int count);

/* Replaces the commands whose first argument is a peer ID (natchat's shell passes "@chat"
 * and "@show_list"): each is a command word, matched when it is the line's first word and
 * a space follows it; the word right after it completes from the peer source. Strings are
 * copied. Empty words and words holding a space (never a first word) are ignored. None at
 * first: no word completes from the peer source. */
void natchat_rl_set_peer_argument_commands(const char *const *words, int count);

/* Where peer IDs come from: asked with the typed prefix of the word right after a
 * peer-argument command (see natchat_rl_set_peer_argument_commands; nothing after that
 * word is completed), a source returns the matching IDs in the order to offer them, as a
 * malloc'ed NULL-terminated array of malloc'ed strings (the shim takes and frees it), or
 * NULL for none. Words that do not start with the prefix are dropped. It is called on the
 * calling thread, from natchat_rl_candidates and so from natchat_rl_read_char when Tab is
 * pressed, and may block (readline shows nothing meanwhile); it must not call back into
 * this shim. `context` is passed back as is. A NULL source (the initial state) completes
 * no peer. */
typedef char **(*natchat_rl_peer_source)(const char *prefix, void *context);
void natchat_rl_set_peer_source(natchat_rl_peer_source source, void *context);

/* Completion candidates for `line` (the whole buffer) when completing the word that
 * starts at `start` with prefix `text`; the same logic readline uses, callable from
 * tests. Returns a malloc'ed NULL-terminated array of malloc'ed strings whose first
 * element is the longest common prefix of the matches (never cut inside a UTF-8
 * character), followed by the matches (commands in list order, peer IDs in the source's
 * order), or NULL when nothing matches. The peer source is asked only when the word is a
 * peer ID (the one right after a peer-argument command), with `text` as the prefix. */
char **natchat_rl_candidates(const char *line, int start, const char *text);

/* History: load from `path`, add a line, save keeping at most `max_entries`. */
int natchat_rl_history_load(const char *path);
void natchat_rl_history_add(const char *line);
int natchat_rl_history_save(const char *path, int max_entries);

/* Frees an array from natchat_rl_candidates. */
void natchat_rl_free_candidates(char **candidates);

#endif
