/* blobstore: `pierd blobstore`, slugs, sources and build caches over HTTP
 * (docs/blobstore.md). */
#ifndef PIER_BLOBSTORE_BLOBSTORE_H
#define PIER_BLOBSTORE_BLOBSTORE_H

int blobstore_main(int argc, char **argv);

#endif
