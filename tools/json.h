/* What the rpal command and its helper programs share: writing a string as
 * JSON (quotes, backslashes and control bytes escaped), so that a name or a
 * path from the namespace cannot break the --json output. */
#ifndef RPAL_TOOLS_JSON_H
#define RPAL_TOOLS_JSON_H

#include <stdio.h>

static inline void json_str(const char *s)
{
    putchar('"');
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        if (c == '"' || c == '\\')
            printf("\\%c", c);
        else if (c < 0x20)
            printf("\\u%04x", c);
        else
            putchar(c);
    }
    putchar('"');
}

#endif
