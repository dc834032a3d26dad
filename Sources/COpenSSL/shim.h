#ifndef CCGATE_COPENSSL_SHIM_H
#define CCGATE_COPENSSL_SHIM_H
#include <openssl/evp.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>
#include <openssl/pem.h>
#include <openssl/err.h>
#include <openssl/rsa.h>
#include <openssl/ec.h>
#include <openssl/core_names.h>
#include <openssl/rand.h>
#include <openssl/bn.h>
#endif
