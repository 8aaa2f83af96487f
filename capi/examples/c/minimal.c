/* The README's example: load an RVC index into slot 0, blend one block of frames. */
#include <stdio.h>
#include "knnblend.h"

int main(int argc, char **argv) {
    kb_live_config cfg = kb_live_config_default();       /* 8 slots, up to 768 dims */
    kb_controller *ctl = NULL; kb_audio *audio = NULL; kb_error *err = NULL;
    if (kb_live_new(&cfg, &ctl, &audio, &err) != KB_OK) return 1;

    kb_ticket *ticket = NULL; kb_ticket_status st;       /* message thread: load, wait */
    kb_controller_load(ctl, 0, argc > 1 ? argv[1] : "added_IVF1024_Flat_v2.index", &ticket, NULL);
    if (kb_ticket_wait(ticket, KB_WAIT_FOREVER, &st, &err) != KB_OK) {
        fprintf(stderr, "not loaded: %s\n", kb_error_message(err));   /* names file + problem */
        kb_error_free(&err);
    }
    kb_ticket_free(&ticket);

    static float frames[16 * 768], out[16 * 768];        /* audio thread, per block: */
    size_t blended = 0;
    kb_audio_begin_block(audio, 0, 0.05f);               /* slot 0, 50 ms crossfades */
    kb_audio_blend_block(audio, frames, 16, 768, 8, 0.75f, out, 16 * 768, &blended);
    kb_audio_end_block(audio);
    printf("%zu of 16 frames blended\n", blended);

    kb_audio_free(&audio); kb_controller_free(&ctl);     /* off the audio thread */
    return st.state == KB_LOAD_PUBLISHED ? 0 : 2;
}
