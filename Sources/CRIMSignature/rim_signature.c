// XML-DSig verification of NVIDIA reference integrity manifests, and the reading of the values
// a GPU verifier needs from the same parsed document.
//
// Threats, and what answers each:
// - A manifest whose signature covers other text than the values read (signature wrapping):
//   exactly one ds:Signature, a child of the root; its one Reference has URI "" (the whole
//   document, the signature itself removed by the enveloped transform); the values are read from
//   the root's own children in the same tree.
// - Transforms that run code or fetch data (XSLT, XPath, remote URIs, retrieval methods): only
//   the enveloped transform, inclusive C14N 1.1, SHA-384 and ECDSA-SHA384 are enabled; no
//   network; no DTD (entity expansion) accepted.
// - A key that is not NVIDIA's: the only trusted certificate is the pinned RIM root; libxmlsec1
//   checks the embedded chain to it at the verifier's instant (the caller also checks the chain
//   with its own code, for precise reasons).
// - Values that would break the line format: any control character in a value is malformed.

#include "rim_signature.h"

#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include <libxml/parser.h>
#include <libxml/tree.h>
#include <xmlsec/xmlsec.h>
#include <xmlsec/errors.h>
#include <xmlsec/keysmngr.h>
#include <xmlsec/openssl/app.h>
#include <xmlsec/openssl/crypto.h>
#include <xmlsec/openssl/x509.h>
#include <xmlsec/transforms.h>
#include <xmlsec/version.h>

#include <openssl/evp.h>
#include <openssl/x509.h>

// The restrictions below are written for 1.2's key-info handling (1.3.0–1.3.2 also read EC key
// values from KeyInfo by default): another series must be reviewed before it is built against.
#if XMLSEC_VERSION_MAJOR != 1 || XMLSEC_VERSION_MINOR != 2
#error "CRIMSignature is written for libxmlsec1 1.2"
#endif
#include <xmlsec/xmldsig.h>
#include <xmlsec/xmltree.h>

static const char swid_ns[] = "http://standards.iso.org/iso/19770/-2/2015/schema.xsd";
static const char sha384_ns[] = "http://www.w3.org/2001/04/xmlenc#sha384";
static const char dsig_ns[] = "http://www.w3.org/2000/09/xmldsig#";

static pthread_once_t once = PTHREAD_ONCE_INIT;
static int init_status = -1;
static __thread char last_error[200];

static void quiet_xmlsec(const char *file, int line, const char *func, const char *object, const char *subject,
                         int reason, const char *msg) {
    (void)file; (void)line; (void)func; (void)object;
    snprintf(last_error, sizeof last_error, "%s%s%s (xmlsec reason %d)", subject ? subject : "",
             subject ? ": " : "", msg ? msg : "", reason);
}

static void quiet_xml(void *ctx, const char *msg, ...) { (void)ctx; (void)msg; }

static void initialize(void) {
    xmlInitParser();
    xmlSetGenericErrorFunc(NULL, quiet_xml);
    if (xmlSecInit() < 0 || xmlSecCheckVersion() != 1) return;
    if (xmlSecOpenSSLAppInit(NULL) < 0 || xmlSecOpenSSLInit() < 0) return;
    // After initialisation, which installs xmlsec's default (printing) callback.
    xmlSecErrorsSetCallback(quiet_xmlsec);
    init_status = 0;
}

typedef struct {
    char *buf;
    size_t cap;
    size_t len;
    int overflow;
} writer;

static void put(writer *w, const char *text) {
    size_t n = strlen(text);
    if (w->overflow || w->len + n > w->cap) {
        w->overflow = 1;
        return;
    }
    memcpy(w->buf + w->len, text, n);
    w->len += n;
}

static int is_clean(const xmlChar *value) {
    for (const xmlChar *p = value; *p; p++) {
        if (*p < 0x20 || *p == 0x7F) return 0;
    }
    return 1;
}

static void fail(char *message, size_t cap, const char *text) { snprintf(message, cap, "%s", text); }

static int is_element(xmlNodePtr node, const char *name, const char *ns) {
    return node->type == XML_ELEMENT_NODE && xmlStrEqual(node->name, (const xmlChar *)name) && node->ns &&
           xmlStrEqual(node->ns->href, (const xmlChar *)ns);
}

static int count_signatures(xmlNodePtr node) {
    int count = 0;
    for (xmlNodePtr child = node->children; child; child = child->next) {
        if (child->type != XML_ELEMENT_NODE) continue;
        if (is_element(child, "Signature", dsig_ns)) count++;
        count += count_signatures(child);
    }
    return count;
}

/// Writes `key<TAB>value` for an attribute that must be present and clean.
static int put_attribute(writer *w, xmlNodePtr node, const char *key, const char *attribute, char *message,
                         size_t cap) {
    xmlChar *value = xmlGetNoNsProp(node, (const xmlChar *)attribute);
    if (!value || !is_clean(value)) {
        if (value) xmlFree(value);
        snprintf(message, cap, "%s has no usable '%s' attribute", (const char *)node->name, attribute);
        return -1;
    }
    put(w, key);
    put(w, "\t");
    put(w, (const char *)value);
    put(w, "\n");
    xmlFree(value);
    return 0;
}

static int put_certificates(writer *w, xmlNodePtr signature, char *message, size_t cap) {
    for (xmlNodePtr info = signature->children; info; info = info->next) {
        if (!is_element(info, "KeyInfo", dsig_ns)) continue;
        for (xmlNodePtr data = info->children; data; data = data->next) {
            if (!is_element(data, "X509Data", dsig_ns)) continue;
            for (xmlNodePtr cert = data->children; cert; cert = cert->next) {
                if (!is_element(cert, "X509Certificate", dsig_ns)) continue;
                xmlChar *text = xmlNodeGetContent(cert);
                if (!text) continue;
                put(w, "cert\t");
                for (xmlChar *p = text; *p; p++) {
                    if (*p == ' ' || *p == '\t' || *p == '\r' || *p == '\n') continue;
                    if (*p < 0x20 || *p >= 0x7F) {
                        xmlFree(text);
                        fail(message, cap, "an X509Certificate holds a control character");
                        return -1;
                    }
                    char one[2] = {(char)*p, 0};
                    put(w, one);
                }
                put(w, "\n");
                xmlFree(text);
            }
        }
    }
    return 0;
}

static int put_measurement(writer *w, xmlNodePtr resource, char *message, size_t cap) {
    const char *names[] = {"index", "active", "alternatives", "size"};
    put(w, "m");
    for (int i = 0; i < 4; i++) {
        xmlChar *value = xmlGetNoNsProp(resource, (const xmlChar *)names[i]);
        if (!value || !is_clean(value) || strchr((const char *)value, ' ')) {
            if (value) xmlFree(value);
            snprintf(message, cap, "a measurement has no usable '%s' attribute", names[i]);
            return -1;
        }
        put(w, "\t");
        put(w, (const char *)value);
        xmlFree(value);
    }
    // Hash0, Hash1, ... in the SHA-384 namespace, until the first absent one (at most 64).
    for (int i = 0; i < 64; i++) {
        char name[16];
        snprintf(name, sizeof name, "Hash%d", i);
        xmlChar *value = xmlGetNsProp(resource, (const xmlChar *)name, (const xmlChar *)sha384_ns);
        if (!value) break;
        if (!is_clean(value)) {
            xmlFree(value);
            fail(message, cap, "a measurement hash holds a control character");
            return -1;
        }
        put(w, "\t");
        put(w, (const char *)value);
        xmlFree(value);
    }
    put(w, "\n");
    return 0;
}

/// The manifest's values: name, version, measurements. -1: not a manifest of the expected shape.
static int put_values(writer *w, xmlNodePtr root, char *message, size_t cap) {
    if (put_attribute(w, root, "name", "name", message, cap) < 0) return -1;
    const char *flags[] = {"corpus", "patch", "supplemental"};
    for (int i = 0; i < 3; i++) {
        xmlChar *value = xmlGetNoNsProp(root, (const xmlChar *)flags[i]);
        int set = value && !xmlStrEqual(value, (const xmlChar *)"false");
        if (value) xmlFree(value);
        if (set) {
            snprintf(message, cap, "a manifest that is a %s tag is not a reference for a whole firmware", flags[i]);
            return -1;
        }
    }
    int metas = 0, payloads = 0;
    for (xmlNodePtr child = root->children; child; child = child->next) {
        if (is_element(child, "Meta", swid_ns)) {
            if (metas++ > 0) break;
            if (put_attribute(w, child, "version", "colloquialVersion", message, cap) < 0) return -1;
            if (put_attribute(w, child, "product", "product", message, cap) < 0) return -1;
        } else if (is_element(child, "Payload", swid_ns)) {
            if (payloads++ > 0) break;
            for (xmlNodePtr resource = child->children; resource; resource = resource->next) {
                if (!is_element(resource, "Resource", swid_ns)) continue;
                xmlChar *type = xmlGetNoNsProp(resource, (const xmlChar *)"type");
                int measurement = type && xmlStrEqual(type, (const xmlChar *)"Measurement");
                if (type) xmlFree(type);
                if (measurement && put_measurement(w, resource, message, cap) < 0) return -1;
            }
        }
    }
    if (metas != 1 || payloads != 1) {
        fail(message, cap, "a manifest has exactly one Meta and one Payload element");
        return -1;
    }
    return 0;
}

/// The base64 DER of the certificate whose key verified the signature.
static int signer_certificate(xmlSecDSigCtxPtr ctx, char *out, size_t cap) {
    if (!ctx->signKey) return -1;
    xmlSecKeyDataPtr data = xmlSecKeyGetData(ctx->signKey, xmlSecOpenSSLKeyDataX509Id);
    X509 *cert = data ? xmlSecOpenSSLKeyDataX509GetKeyCert(data) : NULL;
    if (!cert) return -1;
    unsigned char *der = NULL;
    int length = i2d_X509(cert, &der);
    if (length <= 0) return -1;
    int result = -1;
    if ((size_t)(4 * ((length + 2) / 3) + 1) <= cap) {
        EVP_EncodeBlock((unsigned char *)out, der, length);
        result = 0;
    }
    OPENSSL_free(der);
    return result;
}

/// 0 valid, 1 invalid, 2 unverifiable; the text in `why`, the signer's certificate in `signer`.
static int check_signature(xmlSecKeysMngrPtr manager, xmlNodePtr signature, int64_t when, char *why, size_t cap,
                           char *signer, size_t signer_cap) {
    xmlSecDSigCtxPtr ctx = xmlSecDSigCtxCreate(manager);
    if (!ctx) {
        fail(why, cap, "cannot create a signature context");
        return 2;
    }
    int result = 2;
    ctx->keyInfoReadCtx.certsVerificationTime = (time_t)when;
    ctx->keyInfoReadCtx.maxRetrievalMethodLevel = 0;
    ctx->keyInfoReadCtx.maxEncryptedKeyLevel = 0;
    // The key comes from an X.509 certificate only (no KeyValue, KeyName or retrieval), and the
    // certificate it came from is reported, so the caller holds it to the chain it checks.
    if (xmlSecPtrListAdd(&ctx->keyInfoReadCtx.enabledKeyData, (xmlSecPtr)xmlSecOpenSSLKeyDataX509Id) < 0) {
        fail(why, cap, "cannot restrict the key to X.509 data");
        xmlSecDSigCtxDestroy(ctx);
        return 2;
    }
    ctx->enabledReferenceUris = xmlSecTransformUriTypeEmpty;
    ctx->flags |= XMLSEC_DSIG_FLAGS_IGNORE_MANIFESTS;
    if (xmlSecDSigCtxEnableReferenceTransform(ctx, xmlSecTransformEnvelopedId) < 0 ||
        xmlSecDSigCtxEnableReferenceTransform(ctx, xmlSecTransformInclC14N11Id) < 0 ||
        xmlSecDSigCtxEnableReferenceTransform(ctx, xmlSecOpenSSLTransformSha384Id) < 0 ||
        xmlSecDSigCtxEnableSignatureTransform(ctx, xmlSecTransformInclC14N11Id) < 0 ||
        xmlSecDSigCtxEnableSignatureTransform(ctx, xmlSecOpenSSLTransformEcdsaSha384Id) < 0 ||
        xmlSecDSigCtxEnableSignatureTransform(ctx, xmlSecOpenSSLTransformSha384Id) < 0) {
        fail(why, cap, "cannot restrict the signature's transforms");
    } else {
        last_error[0] = 0;
        if (xmlSecDSigCtxVerify(ctx, signature) < 0) {
            snprintf(why, cap, "no trusted key verifies it: %s", last_error[0] ? last_error : "unknown");
        } else if (ctx->status != xmlSecDSigStatusSucceeded) {
            fail(why, cap, "the signature or a digest does not match the manifest");
            result = 1;
        } else if (xmlSecPtrListGetSize(&ctx->signedInfoReferences) != 1) {
            fail(why, cap, "the signature has more than one reference");
            result = 1;
        } else if (signer_certificate(ctx, signer, signer_cap) < 0) {
            fail(why, cap, "the signing key did not come from a certificate");
            result = 2;
        } else {
            fail(why, cap, "valid");
            result = 0;
        }
    }
    xmlSecDSigCtxDestroy(ctx);
    return result;
}

int ccgate_rim_read(const uint8_t *xml, size_t xml_len, const uint8_t *root_pem, size_t root_len, int64_t when,
                    char *out, size_t out_cap, size_t *out_len, char *message, size_t message_cap) {
    *out_len = 0;
    pthread_once(&once, initialize);
    if (init_status != 0) {
        fail(message, message_cap, "libxmlsec1 did not initialise");
        return -1;
    }
    if (when <= 0 || xml_len > (1u << 24) || root_len > (1u << 16)) {
        fail(message, message_cap, "bad arguments");
        return -1;
    }
    xmlDocPtr doc = xmlReadMemory((const char *)xml, (int)xml_len, "rim.xml", NULL,
                                  XML_PARSE_NONET | XML_PARSE_NOERROR | XML_PARSE_NOWARNING);
    if (!doc) {
        fail(message, message_cap, "not well-formed XML");
        return -1;
    }
    int status = -1;
    xmlSecKeysMngrPtr manager = NULL;
    xmlNodePtr root = xmlDocGetRootElement(doc);
    if (doc->intSubset || doc->extSubset) {
        fail(message, message_cap, "a manifest carries no document type declaration");
        goto done;
    }
    if (!root || !is_element(root, "SoftwareIdentity", swid_ns)) {
        fail(message, message_cap, "the root element is not a SWID SoftwareIdentity");
        goto done;
    }
    xmlNodePtr signature = NULL;
    for (xmlNodePtr child = root->children; child; child = child->next) {
        if (is_element(child, "Signature", dsig_ns)) signature = child;
    }
    if (!signature || count_signatures(root) != 1) {
        fail(message, message_cap, "a manifest has exactly one ds:Signature, a child of its root");
        goto done;
    }
    manager = xmlSecKeysMngrCreate();
    if (!manager || xmlSecOpenSSLAppDefaultKeysMngrInit(manager) < 0 ||
        xmlSecOpenSSLAppKeysMngrCertLoadMemory(manager, root_pem, (xmlSecSize)root_len, xmlSecKeyDataFormatPem,
                                               xmlSecKeyDataTypeTrusted) < 0) {
        fail(message, message_cap, "the RIM root is not a PEM certificate");
        goto done;
    }
    char why[240];
    static __thread char signer[16384];
    signer[0] = 0;
    int verdict = check_signature(manager, signature, when, why, sizeof why, signer, sizeof signer);
    for (char *p = why; *p; p++) {
        if ((unsigned char)*p < 0x20) *p = ' ';
    }
    writer w = {out, out_cap, 0, 0};
    char line[300];
    snprintf(line, sizeof line, "signature\t%d\t%s\n", verdict, why);
    put(&w, line);
    if (signer[0]) {
        put(&w, "signer\t");
        put(&w, signer);
        put(&w, "\n");
    }
    if (put_values(&w, root, message, message_cap) < 0 || put_certificates(&w, signature, message, message_cap) < 0)
        goto done;
    if (w.overflow) {
        fail(message, message_cap, "the manifest's values do not fit the output buffer");
        status = -2;
        goto done;
    }
    *out_len = w.len;
    status = 0;
done:
    if (manager) xmlSecKeysMngrDestroy(manager);
    xmlFreeDoc(doc);
    return status;
}
