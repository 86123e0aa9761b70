#include "CReadline.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <readline/readline.h>
#include <readline/history.h>

typedef struct {
    char **words;
    int count;
} word_list;

static word_list commands;
static word_list peer_argument_commands;
static natchat_rl_peer_source peer_source;
static void *peer_source_context;
static char *pending_line;
static int pending_state; /* 0 none, 1 line, 2 eof */

static void clear_list(word_list *list) {
    for (int i = 0; i < list->count; i++) free(list->words[i]);
    free(list->words);
    list->words = NULL;
    list->count = 0;
}

static void set_list(word_list *list, const char *const *words, int count) {
    clear_list(list);
    if (count <= 0) return;
    list->words = calloc((size_t)count, sizeof(char *));
    if (!list->words) return;
    for (int i = 0; i < count; i++) {
        list->words[list->count] = strdup(words[i] ? words[i] : "");
        if (list->words[list->count]) list->count++;
    }
}

void natchat_rl_set_commands(const char *const *words, int count) { set_list(&commands, words, count); }

void natchat_rl_set_peer_argument_commands(const char *const *words, int count) {
    set_list(&peer_argument_commands, words, count);
}

void natchat_rl_set_peer_source(natchat_rl_peer_source source, void *context) {
    peer_source = source;
    peer_source_context = source ? context : NULL;
}

typedef enum { COMPLETE_NOTHING, COMPLETE_COMMAND, COMPLETE_PEER } completion_kind;

static completion_kind kind_for(const char *line, int start) {
    int i = 0;
    while (i < start && line[i] == ' ') i++;
    if (i == start) return COMPLETE_COMMAND; /* completing the first word */
    for (int c = 0; c < peer_argument_commands.count; c++) {
        const char *word = peer_argument_commands.words[c];
        size_t length = strlen(word);
        /* readline splits words at spaces only, so an empty word or one holding a space
           can never be the first word: it is ignored. */
        if (length == 0 || strchr(word, ' ')) continue;
        if (strncmp(line + i, word, length) != 0 || line[i + (int)length] != ' ') continue;
        int j = i + (int)length;
        while (j < start && line[j] == ' ') j++;
        /* Past the peer ID (e.g. @chat's text, @show_list's page): nothing to complete. */
        return j == start ? COMPLETE_PEER : COMPLETE_NOTHING;
    }
    return COMPLETE_NOTHING;
}

/* `result` holds `n` matches from index 1 on (and room for result[0] and a NULL after
 * them): puts their longest common prefix in result[0], readline's convention. Frees
 * everything and returns NULL when there is no match or memory runs out. */
static char **with_common_prefix(char **result, int n) {
    if (n == 0) { free(result); return NULL; }
    size_t common = strlen(result[1]);
    for (int i = 2; i <= n; i++) {
        size_t k = 0;
        while (k < common && result[i][k] == result[1][k]) k++;
        common = k;
    }
    /* Bytes were compared: never cut a UTF-8 character in two ("한국어" and "한글" share
       "한" and the lead byte of the next character), or Tab would insert a broken byte. */
    while (common > 0 && ((unsigned char)result[1][common] & 0xC0) == 0x80) common--;
    result[0] = strndup(result[1], common);
    if (!result[0]) { natchat_rl_free_candidates(result + 1); free(result); return NULL; }
    return result;
}

static char **command_candidates(const char *text) {
    if (commands.count == 0) return NULL;
    size_t prefix = strlen(text);
    char **result = calloc((size_t)commands.count + 2, sizeof(char *));
    if (!result) return NULL;
    int n = 0;
    for (int i = 0; i < commands.count; i++) {
        if (strncmp(commands.words[i], text, prefix) == 0) {
            char *copy = strdup(commands.words[i]);
            if (copy) result[1 + n++] = copy;
        }
    }
    return with_common_prefix(result, n);
}

static char **peer_candidates(const char *text) {
    if (!peer_source) return NULL;
    char **ids = peer_source(text, peer_source_context);
    if (!ids) return NULL;
    size_t count = 0;
    while (ids[count]) count++;
    char **result = calloc(count + 2, sizeof(char *));
    if (!result) { natchat_rl_free_candidates(ids); return NULL; }
    /* The source's strings move into the result; a word without the prefix (a sloppy
       source) is dropped, so only matches are ever offered. */
    size_t prefix = strlen(text);
    int n = 0;
    for (size_t i = 0; i < count; i++) {
        if (strncmp(ids[i], text, prefix) == 0) result[1 + n++] = ids[i];
        else free(ids[i]);
    }
    free(ids);
    return with_common_prefix(result, n);
}

char **natchat_rl_candidates(const char *line, int start, const char *text) {
    if (!line || !text || start < 0 || (size_t)start > strlen(line)) return NULL;
    switch (kind_for(line, start)) {
    case COMPLETE_COMMAND: return command_candidates(text);
    case COMPLETE_PEER: return peer_candidates(text);
    default: return NULL;
    }
}

void natchat_rl_free_candidates(char **candidates) {
    if (!candidates) return;
    for (int i = 0; candidates[i]; i++) free(candidates[i]);
    free(candidates);
}

static char **attempted_completion(const char *text, int start, int end) {
    (void)end;
    rl_attempted_completion_over = 1; /* never fall back to file names */
    return natchat_rl_candidates(rl_line_buffer, start, text);
}

static void line_handler(char *line) {
    if (!line) {
        pending_state = 2;
        return;
    }
    free(pending_line);
    pending_line = line;
    pending_state = 1;
}

void natchat_rl_install(const char *prompt) {
    rl_catch_signals = 0;
    rl_catch_sigwinch = 1;
    rl_readline_name = "natchat";
    rl_attempted_completion_function = attempted_completion;
    rl_basic_word_break_characters = " ";
    rl_callback_handler_install(prompt, line_handler);
}

void natchat_rl_remove(void) {
    rl_callback_handler_remove();
}

void natchat_rl_read_char(void) { rl_callback_read_char(); }

int natchat_rl_take_line(char **line) {
    int state = pending_state;
    pending_state = 0;
    if (state == 1) {
        *line = pending_line;
        pending_line = NULL;
    }
    return state;
}

void natchat_rl_print_above(const char *text) {
    /* Save what the user typed, wipe the prompt line, print, then redraw it intact. */
    int saved_point = rl_point;
    char *saved_line = rl_copy_text(0, rl_end);
    rl_save_prompt();
    /* Clearing the undo list matters: readline would otherwise write the emptied line back
       into the current history entry when the user next presses Enter. */
    rl_replace_line("", 1);
    rl_redisplay();
    fputs("\r\033[K", rl_outstream ? rl_outstream : stdout);
    fputs(text, rl_outstream ? rl_outstream : stdout);
    fputc('\n', rl_outstream ? rl_outstream : stdout);
    fflush(rl_outstream ? rl_outstream : stdout);
    rl_restore_prompt();
    if (saved_line) {
        rl_replace_line(saved_line, 1);
        free(saved_line);
    }
    rl_point = saved_point;
    rl_on_new_line();
    rl_redisplay();
}

int natchat_rl_history_load(const char *path) {
    using_history();
    return read_history(path);
}

void natchat_rl_history_add(const char *line) {
    if (line && *line) {
        add_history(line);
        using_history(); /* the next Up starts from the newest entry */
    }
}

int natchat_rl_history_save(const char *path, int max_entries) {
    int status = write_history(path);
    if (status == 0 && max_entries > 0) status = history_truncate_file(path, max_entries);
    return status;
}
